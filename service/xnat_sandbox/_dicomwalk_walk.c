/* The sandbox's header walker in C (see _dicomwalk_c.c): the top-level walk (dicomwalk.walk's
 * loop) and `walk`, the module function that runs it.
 */
#include "_dicomwalk_c.h"

#include <stdlib.h>

static PyObject *make(const Raw *r) {
    Element *e = PyObject_New(Element, &ElementType);
    if (e == NULL) return NULL;
    e->tag = r->tag;
    e->vr = r->vr;
    Py_INCREF(e->vr);
    e->start = r->start;
    e->value = r->value;
    e->length = r->length;
    e->end = r->end;
    e->canonical = (char)r->canonical;
    return (PyObject *)e;
}

static int wanted_has(const uint32_t *wanted, Py_ssize_t n, long long tag) {
    Py_ssize_t lo = 0, hi = n;
    while (lo < hi) {
        Py_ssize_t mid = (lo + hi) / 2;
        if ((long long)wanted[mid] < tag)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < n && (long long)wanted[lo] == tag;
}

static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

static int append(PyObject *list, const Raw *r) {
    PyObject *e = make(r);
    if (e == NULL) return ERROR;
    int rc = PyList_Append(list, e);
    Py_DECREF(e);
    return rc < 0 ? ERROR : OK;
}

/* The top-level walk (dicomwalk.walk's loop) after the file meta. */
static int body(Ctx *c, Py_ssize_t pos, long long last, long long keep_to, const uint32_t *wanted,
                Py_ssize_t n_wanted, PyObject *kept, Py_ssize_t *out_stop,
                Py_ssize_t *out_boundary) {
    const unsigned char *d = c->d;
    Py_ssize_t size = c->size;
    long long boundary = -1, previous = -1;
    long long limit = last < PIXEL_DATA - 1 ? last : PIXEL_DATA - 1;
    int implicit = c->implicit;
    int rc;
    for (;;) {
        if (!implicit) {
            while (pos + 12 <= size) {
                const unsigned char *p = d + pos;
                unsigned group = u16(p);
                long long tag = (long long)group << 16 | u16(p + 2);
                if (tag <= previous || tag > limit || group == 0x0002) break;
                unsigned key = vr_key(p + 4);
                unsigned kind = vr_kind[key];
                if (kind == 0) break;
                long long length;
                int header;
                if (kind == 2) {
                    length = u32(p + 8);
                    if (length == UNDEFINED) break;
                    header = 12;
                } else {
                    length = u16(p + 6);
                    header = 8;
                }
                long long end = pos + header + length;
                if (end > size) break;
                int keep = 0;
                if (tag <= keep_to) {
                    keep = 1;
                } else {
                    if (boundary < 0) boundary = pos;
                    keep = wanted_has(wanted, n_wanted, tag);
                }
                if (keep) {
                    Raw r = {tag, pos, pos + header, length, end, vr_name[key], 1};
                    if (append(kept, &r) != OK) return ERROR;
                }
                previous = tag;
                pos = (Py_ssize_t)end;
            }
        }
        if (pos + 12 > size) {
            if (!c->eof) return MORE;
            if (pos == size) break;
            if (pos + 8 > size) return cannot(c, "truncated element header");
        }
        const unsigned char *p = d + pos;
        unsigned group = u16(p), number = u16(p + 2);
        long long length;
        int header = 8;
        PyObject *vr = Py_None;
        if (implicit) {
            length = u32(p + 4);
        } else {
            unsigned key = vr_key(p + 4);
            unsigned kind = vr_kind[key];
            if (kind == 0) {
                if (((long long)group << 16 | number) > last) break;
                return cannot_vr(c, p + 4);
            }
            vr = vr_name[key];
            length = u16(p + 6);
            if (kind == 2) {
                if (pos + 12 > size) return cannot(c, "truncated element header");
                length = u32(p + 8);
                header = 12;
            }
        }
        long long tag = (long long)group << 16 | number;
        if (tag > last || tag >= PIXEL_DATA) break;
        if (tag <= previous || group == 0x0002 || group == 0xFFFE)
            return cannot(c, "tags out of order");
        Raw r;
        int have = 0;
        if (length == UNDEFINED) {
            if ((rc = element_at(c, pos, &r)) != OK) return rc;
            have = 1;
        } else if (tag <= keep_to || wanted_has(wanted, n_wanted, tag)) {
            Raw e = {tag, pos, pos + header, length, pos + header + length, vr, 1};
            r = e;
            have = 1;
        }
        long long end = have ? r.end : pos + header + length;
        if (end > size) return c->eof ? cannot(c, "truncated element") : MORE;
        if (boundary < 0 && tag > keep_to) boundary = pos;
        if (have && append(kept, &r) != OK) return ERROR;
        previous = tag;
        pos = (Py_ssize_t)end;
    }
    *out_stop = pos;
    *out_boundary = boundary < 0 ? pos : (Py_ssize_t)boundary;
    return OK;
}

static PyObject *syntax_of(Ctx *c, const Raw *e) {
    /* data[...].decode("ascii", "replace").rstrip("\0 ").strip(), through str itself */
    PyObject *text = PyUnicode_DecodeASCII((const char *)c->d + e->value, (Py_ssize_t)e->length,
                                           "replace");
    if (text == NULL) return NULL;
    PyObject *chars = PyUnicode_FromStringAndSize("\0 ", 2);
    PyObject *r = chars ? PyObject_CallMethod(text, "rstrip", "O", chars) : NULL;
    Py_XDECREF(chars);
    Py_DECREF(text);
    if (r == NULL) return NULL;
    PyObject *s = PyObject_CallMethod(r, "strip", NULL);
    Py_DECREF(r);
    return s;
}

PyObject *walk(PyObject *Py_UNUSED(self), PyObject *args) {
    Py_buffer view;
    long long last, keep_to;
    int eof;
    PyObject *wanted_set, *is_sq;
    if (!PyArg_ParseTuple(args, "y*LpLOO", &view, &last, &eof, &keep_to, &wanted_set, &is_sq))
        return NULL;
    PyObject *result = NULL, *meta = NULL, *kept = NULL, *syntax = NULL;
    uint32_t wanted_small[64], *wanted = wanted_small;
    Raw *meta_raw = NULL;
    Ctx c = {view.buf, view.len, eof, 0, NULL, {0}, is_sq, 0};
    int rc;

    Py_ssize_t n_wanted = PySet_Size(wanted_set);
    if (n_wanted < 0) goto done;
    if (n_wanted > 64 && (wanted = PyMem_Malloc(n_wanted * sizeof *wanted)) == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    {
        Py_ssize_t i = 0;
        PyObject *iterator = PyObject_GetIter(wanted_set), *key;
        if (iterator == NULL) goto done;
        while (i < n_wanted && (key = PyIter_Next(iterator)) != NULL) {
            unsigned long value = PyLong_AsUnsignedLong(key);
            Py_DECREF(key);
            if (value == (unsigned long)-1 && PyErr_Occurred()) break;
            wanted[i++] = (uint32_t)value;
        }
        Py_DECREF(iterator);
        if (PyErr_Occurred()) goto done;
        n_wanted = i;
        qsort(wanted, n_wanted, sizeof *wanted, cmp_u32);
    }

    if (c.size < 132) {
        rc = eof ? cannot(&c, "shorter than a Part 10 preamble") : MORE;
        goto refused;
    }
    if (memcmp(c.d + 128, "DICM", 4) != 0) {
        rc = cannot(&c, "no DICM prefix");
        goto refused;
    }
    meta_raw = PyMem_Malloc(16 * sizeof *meta_raw);
    if (meta_raw == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    int n_meta;
    Py_ssize_t pos;
    if ((rc = meta_walk(&c, &meta_raw, &n_meta, &pos)) != OK) goto refused;
    const Raw *syntax_element = NULL;
    for (int i = 0; i < n_meta; i++)
        if (meta_raw[i].tag == 0x00020010) syntax_element = &meta_raw[i];
    if (syntax_element == NULL) {
        rc = cannot(&c, "no transfer syntax");
        goto refused;
    }
    if ((syntax = syntax_of(&c, syntax_element)) == NULL) goto done;
    if (PyUnicode_CompareWithASCIIString(syntax, "1.2.840.10008.1.2.2") == 0 ||
        PyUnicode_CompareWithASCIIString(syntax, "1.2.840.10008.1.2.1.99") == 0) {
        PyObject *why = PyUnicode_FromFormat("transfer syntax %U", syntax);
        if (why != NULL) result = why;
        goto done;
    }
    c.implicit = PyUnicode_CompareWithASCIIString(syntax, "1.2.840.10008.1.2") == 0;
    if ((meta = PyDict_New()) == NULL) goto done;
    for (int i = 0; i < n_meta; i++) {
        PyObject *key = PyLong_FromLongLong(meta_raw[i].tag);
        PyObject *e = key ? make(&meta_raw[i]) : NULL;
        int bad = e == NULL || PyDict_SetItem(meta, key, e) < 0;
        Py_XDECREF(key);
        Py_XDECREF(e);
        if (bad) goto done;
    }
    if (c.implicit && c.size >= pos + 6 && c.d[pos + 4] > 0x40 && c.d[pos + 4] < 0x5B &&
        c.d[pos + 5] > 0x40 && c.d[pos + 5] < 0x5B) {
        rc = cannot(&c, "an implicit VR transfer syntax over explicit VR elements");
        goto refused;
    }
    if ((kept = PyList_New(0)) == NULL) goto done;
    Py_ssize_t stop = 0, boundary = 0;
    if ((rc = body(&c, pos, last, keep_to, wanted, n_wanted, kept, &stop, &boundary)) != OK)
        goto refused;
    result = Py_BuildValue("OOOnOnn", c.implicit ? Py_True : Py_False, syntax, meta, pos, kept,
                           stop, boundary);
    goto done;

refused:
    if (rc == MORE) {
        result = Py_None;
        Py_INCREF(result);
    } else if (rc == CANNOT) {
        result = PyUnicode_FromString(c.why);
    } /* ERROR: the exception is set */

done:
    if (wanted != wanted_small) PyMem_Free(wanted);
    PyMem_Free(meta_raw);
    Py_XDECREF(meta);
    Py_XDECREF(kept);
    Py_XDECREF(syntax);
    PyBuffer_Release(&view);
    return result;
}
