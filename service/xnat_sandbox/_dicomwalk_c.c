/* The sandbox's header walker (xnat_sandbox/dicomwalk.py's `walk`) in C.
 *
 * Why: the import's request thread spent most of its CPU walking headers in Python (about
 * 170 us a file, most of it in building one object per element and in the interpreter's loop
 * over hundreds of private elements). This is a line-for-line transcription of dicomwalk.walk
 * and its helpers, with exactly the same acceptance rules: it returns None where the Python
 * walker raises NeedMore and a str (the reason) where it raises CannotWalk; dicomwalk.walk
 * turns those into the same exceptions. Only pydicom's dictionary (is this implicit-VR tag a
 * sequence?) is asked through a callable, as the Python walker asks it.
 *
 * walk(data, last, eof, keep_to, wanted, is_sq) ->
 *     None | str | (implicit, transfer_syntax, meta, meta_end, elements, stop, boundary)
 * where meta is {tag: Element} and elements the kept top-level Elements.
 *
 * Nothing here comes from xnatdrop: the sandbox stands in for XNAT and reads bytes itself.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <stdlib.h>

#define PIXEL_DATA 0x7FE00010LL
#define ITEM 0xFFFEE000U
#define ITEM_END 0xFFFEE00DU
#define SEQUENCE_END 0xFFFEE0DDU
#define UNDEFINED 0xFFFFFFFFU
#define MAX_DEPTH 64 /* dicomwalk.MAX_DEPTH: sequences nested deeper are CannotWalk */

enum { OK = 0, ERROR = -1, MORE = 1, CANNOT = 2 };

/* -- Element: the same attributes as dicomwalk.Element ---------------------------------- */

typedef struct {
    PyObject_HEAD
    long long tag;
    PyObject *vr; /* str or None */
    long long start;
    long long value;
    long long length;
    long long end;
    char canonical;
} Element;

static void Element_dealloc(Element *self) {
    Py_XDECREF(self->vr);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Element_repr(Element *self) {
    return PyUnicode_FromFormat("Element(tag=%lld, vr=%R, start=%lld, value=%lld, length=%lld, "
                                "end=%lld, canonical=%s)",
                                self->tag, self->vr, self->start, self->value, self->length,
                                self->end, self->canonical ? "True" : "False");
}

static PyMemberDef Element_members[] = {
    {"tag", T_LONGLONG, offsetof(Element, tag), 0, "the element's tag"},
    {"vr", T_OBJECT, offsetof(Element, vr), 0, "its VR (None in implicit VR)"},
    {"start", T_LONGLONG, offsetof(Element, start), 0, "offset of its tag"},
    {"value", T_LONGLONG, offsetof(Element, value), 0, "offset of its value"},
    {"length", T_LONGLONG, offsetof(Element, length), 0, "its length (0xFFFFFFFF: undefined)"},
    {"end", T_LONGLONG, offsetof(Element, end), 0, "offset past it"},
    {"canonical", T_BOOL, offsetof(Element, canonical), 0, "written back unchanged by pydicom"},
    {NULL},
};

static PyTypeObject ElementType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "xnat_sandbox._dicomwalk_c.Element",
    .tp_basicsize = sizeof(Element),
    .tp_dealloc = (destructor)Element_dealloc,
    .tp_repr = (reprfunc)Element_repr,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "One top-level element: where it starts, where its value starts, where it ends.",
    .tp_members = Element_members,
};

/* -- VRs ---------------------------------------------------------------------------------- */

static const char *LONG_VRS[] = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ",
                                 "SV", "UC", "UN", "UR", "UT", "UV", NULL};
static const char *SHORT_VRS[] = {"AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO",
                                  "LT", "PN", "SH", "SL", "SS", "ST", "TM", "UI", "UL", "US", NULL};
/* two VR bytes -> 0 unknown, 1 short (16-bit length), 2 long (reserved + 32-bit length) */
static unsigned char vr_kind[65536];
static PyObject *vr_name[65536]; /* interned str for known VRs */

static inline unsigned vr_key(const unsigned char *p) { return (unsigned)p[0] << 8 | p[1]; }
static inline unsigned u16(const unsigned char *p) { return (unsigned)p[0] | (unsigned)p[1] << 8; }
static inline uint32_t u32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* -- the walk ----------------------------------------------------------------------------- */

typedef struct {
    const unsigned char *d;
    Py_ssize_t size;
    int eof;
    int implicit;
    const char *why; /* CannotWalk's reason */
    char buf[64];
    PyObject *is_sq; /* tag -> 1 (SQ), 0 (not SQ), -1 (not in the dictionary) */
    int depth;
} Ctx;

typedef struct {
    long long tag, start, value, length, end;
    PyObject *vr; /* borrowed */
    int canonical;
} Raw;

static int cannot(Ctx *c, const char *why) {
    c->why = why;
    return CANNOT;
}

static int cannot_vr(Ctx *c, const unsigned char *p) {
    /* the same text as Python's f"VR {vr_bytes!r}" */
    PyObject *b = PyBytes_FromStringAndSize((const char *)p, 2);
    if (b == NULL) return ERROR;
    PyObject *r = PyObject_Repr(b);
    Py_DECREF(b);
    if (r == NULL) return ERROR;
    snprintf(c->buf, sizeof c->buf, "VR %s", PyUnicode_AsUTF8(r));
    Py_DECREF(r);
    c->why = c->buf;
    return CANNOT;
}

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

/* dicomwalk._explicit */
static int explicit_at(Ctx *c, Py_ssize_t pos, Raw *out) {
    if (pos + 8 > c->size) return MORE;
    const unsigned char *p = c->d + pos;
    unsigned kind = vr_kind[vr_key(p + 4)];
    if (kind == 0) return cannot_vr(c, p + 4);
    out->tag = (long long)u16(p) << 16 | u16(p + 2);
    out->vr = vr_name[vr_key(p + 4)];
    out->start = pos;
    out->canonical = 1;
    if (kind == 1) {
        out->length = u16(p + 6);
        out->value = pos + 8;
        out->end = pos + 8 + out->length;
        return OK;
    }
    if (pos + 12 > c->size) return MORE;
    uint32_t length = u32(p + 8);
    out->length = length;
    out->value = pos + 12;
    out->end = pos + 12 + (length == UNDEFINED ? 0 : (long long)length);
    return OK;
}

static int item(Ctx *c, Py_ssize_t pos, uint32_t length, Py_ssize_t *out_pos, int *out_canonical);

/* dicomwalk._sequence */
static int sequence(Ctx *c, Py_ssize_t pos, Py_ssize_t *out_end, int *out_canonical) {
    int canonical = 1;
    for (;;) {
        if (pos + 8 > c->size) return c->eof ? cannot(c, "truncated sequence") : MORE;
        const unsigned char *p = c->d + pos;
        uint32_t tag = (uint32_t)u16(p) << 16 | u16(p + 2);
        uint32_t length = u32(p + 4);
        if (tag == SEQUENCE_END) {
            *out_end = pos + 8;
            *out_canonical = canonical && length == 0;
            return OK;
        }
        if (tag != ITEM) return cannot(c, "a sequence holds something other than items");
        int item_canonical = 1, rc;
        if ((rc = item(c, pos + 8, length, &pos, &item_canonical)) != OK) return rc;
        canonical = canonical && item_canonical;
    }
}

/* dicomwalk._is_sequence */
static int is_sequence(Ctx *c, const Raw *e, int *answer) {
    if (!c->implicit) {
        *answer = e->vr != Py_None && PyUnicode_CompareWithASCIIString(e->vr, "SQ") == 0;
        return OK;
    }
    PyObject *r = PyObject_CallFunction(c->is_sq, "L", e->tag);
    if (r == NULL) return ERROR;
    long known = PyLong_AsLong(r);
    Py_DECREF(r);
    if (known == -1 && PyErr_Occurred()) return ERROR;
    if (known >= 0) {
        *answer = known == 1;
        return OK;
    }
    Py_ssize_t pos = e->value;
    *answer = c->size >= pos + 4 && u16(c->d + pos) == 0xFFFE && u16(c->d + pos + 2) == 0xE000;
    return OK;
}

/* dicomwalk._element */
static int element_at(Ctx *c, Py_ssize_t pos, Raw *out) {
    if (pos + 8 > c->size) return c->eof ? cannot(c, "truncated element header") : MORE;
    int rc;
    if (c->implicit) {
        const unsigned char *p = c->d + pos;
        out->tag = (long long)u16(p) << 16 | u16(p + 2);
        out->vr = Py_None;
        out->start = pos;
        out->value = pos + 8;
        out->length = u32(p + 4);
        out->end = pos + 8 + out->length;
        out->canonical = 1;
    } else if ((rc = explicit_at(c, pos, out)) != OK) {
        return rc;
    }
    if (out->length != UNDEFINED) return OK;
    int sq;
    if ((rc = is_sequence(c, out, &sq)) != OK) return rc;
    if (!sq) {
        snprintf(c->buf, sizeof c->buf, "undefined length outside a sequence (%08llX)",
                 (unsigned long long)out->tag);
        c->why = c->buf;
        return CANNOT;
    }
    if (++c->depth > MAX_DEPTH) return cannot(c, "sequences nested too deep");
    Py_ssize_t end;
    int canonical;
    rc = sequence(c, out->value, &end, &canonical);
    c->depth--;
    if (rc != OK) return rc;
    out->end = end;
    out->canonical = canonical;
    return OK;
}

/* dicomwalk._item */
static int item(Ctx *c, Py_ssize_t pos, uint32_t length, Py_ssize_t *out_pos, int *out_canonical) {
    int bounded = length != UNDEFINED;
    long long end = (long long)pos + length;
    int canonical = 1;
    long long previous = -1;
    Py_ssize_t size = c->size;
    for (;;) {
        if (bounded && pos >= end) {
            if (pos != end) return cannot(c, "an item's elements overrun its length");
            *out_pos = pos;
            *out_canonical = canonical;
            return OK;
        }
        if (pos + 12 > size) {
            if (c->eof && pos + 8 > size) return cannot(c, "truncated item");
            if (!c->eof) return MORE;
        }
        const unsigned char *p = c->d + pos;
        unsigned group = u16(p), number = u16(p + 2);
        long long value_length;
        int header = 8;
        if (c->implicit) {
            value_length = u32(p + 4);
        } else if (group == 0xFFFE) {
            value_length = u32(p + 4);
        } else {
            unsigned kind = vr_kind[vr_key(p + 4)];
            if (kind == 0) return cannot_vr(c, p + 4);
            value_length = u16(p + 6);
            if (kind == 2) {
                if (pos + 12 > size) return cannot(c, "truncated item");
                value_length = u32(p + 8);
                header = 12;
            }
        }
        long long tag = (long long)group << 16 | number;
        if (group == 0xFFFE) {
            if (!bounded && tag == ITEM_END) {
                *out_pos = pos + 8;
                *out_canonical = canonical && value_length == 0;
                return OK;
            }
            return cannot(c, "a delimiter inside an item");
        }
        int element_canonical;
        if (value_length == UNDEFINED) {
            Raw e;
            int rc = element_at(c, pos, &e);
            if (rc != OK) return rc;
            element_canonical = e.canonical;
            pos = e.end;
        } else {
            element_canonical = 1;
            pos = pos + header + value_length;
        }
        if (pos > size) return c->eof ? cannot(c, "truncated item element") : MORE;
        /* pydicom writes an item's elements sorted, without group lengths (PS3.5 7.2) */
        if (tag <= previous || number == 0 || !element_canonical) canonical = 0;
        previous = tag;
    }
}

/* dicomwalk._meta: fills `meta` (at most `cap`), returns the data set's offset in *out_pos */
static int meta_walk(Ctx *c, Raw **meta_p, int *count, Py_ssize_t *out_pos) {
    Raw *meta = *meta_p;
    int cap = 16;
    Py_ssize_t pos = 132;
    long long previous = -1;
    int n = 0;
    for (;;) {
        if (pos + 8 > c->size) {
            if (!c->eof) return MORE;
            break;
        }
        if (c->d[pos] != 0x02 || c->d[pos + 1] != 0x00) break;
        Raw e;
        int rc = explicit_at(c, pos, &e);
        if (rc != OK) return rc;
        if (e.tag <= previous || e.length == UNDEFINED) return cannot(c, "file meta out of order");
        if (e.end > c->size) return c->eof ? cannot(c, "truncated file meta") : MORE;
        if (n == cap) {
            Raw *grown = PyMem_Realloc(meta, 2 * cap * sizeof *meta);
            if (grown == NULL) {
                PyErr_NoMemory();
                return ERROR;
            }
            *meta_p = meta = grown;
            cap *= 2;
        }
        meta[n++] = e;
        previous = e.tag;
        pos = e.end;
    }
    *count = n;
    *out_pos = pos;
    return OK;
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

static PyObject *walk(PyObject *Py_UNUSED(self), PyObject *args) {
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

/* -- texts: dicomwalk.texts (the importer's string fields, as dicomwalk.ascii_text reads them) */

static int is_space(unsigned char b) { /* str.isspace() for ASCII */
    return b == ' ' || (b >= '\t' && b <= '\r') || (b >= 0x1C && b <= 0x1F);
}

static PyObject *texts(PyObject *Py_UNUSED(self), PyObject *args) {
    Py_buffer view;
    PyObject *elements, *specs;
    if (!PyArg_ParseTuple(args, "y*O!O!", &view, &PyList_Type, &elements, &PyTuple_Type, &specs))
        return NULL;
    const unsigned char *d = view.buf;
    Py_ssize_t n = PyList_GET_SIZE(elements), n_specs = PyTuple_GET_SIZE(specs);
    PyObject *out = PyList_New(n_specs);
    if (out == NULL) goto fail;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (Py_TYPE(PyList_GET_ITEM(elements, i)) != &ElementType) {
            PyErr_SetString(PyExc_TypeError, "texts() reads the C walk's elements only");
            goto fail;
        }
    }
    for (Py_ssize_t s = 0; s < n_specs; s++) {
        PyObject *spec = PyTuple_GET_ITEM(specs, s);
        long long tag;
        PyObject *vr;
        int single;
        if (!PyArg_ParseTuple(spec, "LOp", &tag, &vr, &single)) goto fail;
        /* the element with this tag: the kept elements are in ascending tag order */
        Py_ssize_t lo = 0, hi = n;
        while (lo < hi) {
            Py_ssize_t mid = (lo + hi) / 2;
            if (((Element *)PyList_GET_ITEM(elements, mid))->tag < tag)
                lo = mid + 1;
            else
                hi = mid;
        }
        Element *e = lo < n ? (Element *)PyList_GET_ITEM(elements, lo) : NULL;
        PyObject *text;
        if (e == NULL || e->tag != tag) {
            text = PyUnicode_New(0, 0);
        } else {
            if (vr != Py_None && e->vr != Py_None) {
                int same = PyUnicode_Compare(e->vr, vr);
                if (same == -1 && PyErr_Occurred()) goto fail;
                if (same != 0) goto refuse;
            }
            /* data[value : value + length], cut at the end of data as a slice is (an
             * undefined-length sequence's length is 0xFFFFFFFF) */
            long long start = e->value < view.len ? e->value : view.len;
            long long stop = e->value + e->length < view.len ? e->value + e->length : view.len;
            const unsigned char *raw = d + start;
            Py_ssize_t length = stop > start ? (Py_ssize_t)(stop - start) : 0;
            for (Py_ssize_t k = 0; k < length; k++) {
                unsigned char b = raw[k];
                if (b >= 0x80 || b == 0x1B || (b == '\\' && !single)) goto refuse;
            }
            Py_ssize_t a = 0, z = length; /* .rstrip("\0 ").strip() */
            while (z > 0 && (raw[z - 1] == 0 || raw[z - 1] == ' ')) z--;
            while (z > 0 && is_space(raw[z - 1])) z--;
            while (a < z && is_space(raw[a])) a++;
            text = PyUnicode_DecodeASCII((const char *)raw + a, z - a, NULL);
        }
        if (text == NULL) goto fail;
        PyList_SET_ITEM(out, s, text);
    }
    PyBuffer_Release(&view);
    return out;
refuse:
    Py_DECREF(out);
    PyBuffer_Release(&view);
    Py_RETURN_NONE;
fail:
    Py_XDECREF(out);
    PyBuffer_Release(&view);
    return NULL;
}

static PyMethodDef methods[] = {
    {"walk", walk, METH_VARARGS,
     "walk(data, last, eof, keep_to, wanted, is_sq): dicomwalk.walk's answer as a tuple, None "
     "(NeedMore) or the reason it cannot walk (CannotWalk)."},
    {"texts", texts, METH_VARARGS,
     "texts(data, elements, specs): dicomwalk.texts_python's answer for the C walk's elements."},
    {NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_dicomwalk_c",
                                    "dicomwalk.walk in C (see dicomwalk.py).", -1, methods};

PyMODINIT_FUNC PyInit__dicomwalk_c(void) {
    for (int long_ = 0; long_ < 2; long_++) {
        for (const char **vr = long_ ? LONG_VRS : SHORT_VRS; *vr; vr++) {
            unsigned key = vr_key((const unsigned char *)*vr);
            vr_kind[key] = long_ ? 2 : 1;
            vr_name[key] = PyUnicode_InternFromString(*vr);
            if (vr_name[key] == NULL) return NULL;
        }
    }
    if (PyType_Ready(&ElementType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    Py_INCREF(&ElementType);
    if (PyModule_AddObject(m, "Element", (PyObject *)&ElementType) < 0) {
        Py_DECREF(&ElementType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
