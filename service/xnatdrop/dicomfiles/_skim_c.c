/* The walk's element loops (`skim._skim_py`, `skim._step_sequence_py`, `skim._skim_sequence_py`)
 * in C, and the module, which also holds the per-frame byte scan (`_skim_parts.c`).
 *
 * Why: on a 2-core VM the check is CPU bound, and these two loops were about half of its CPU
 * per file (~230 of ~420 us on the benchmark's session): each element costs a struct unpack, a
 * few set lookups and a slice in Python, a few nanoseconds here. Each function is a line-by-line
 * translation of its Python twin in skim.py, with the same arguments, return values, declines
 * and `top`/`found` contents, and the same calls on the window (`refill`, `get`), whose
 * exceptions propagate as they do from the Python loop. It declines (returns `off`, or -1)
 * where its arguments are outside what the walk gives (a `buf` that is not bytes, an offset
 * outside it): the general walk then does that element exactly, as for any other decline.
 *
 * The VRs, tags and limits are not written here: skim.py hands them over once at import
 * (`configure`), from tags.py, so the two implementations cannot drift apart.
 */
#define _GNU_SOURCE /* memmem */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#include "_skim_c.h"

#define UNDEFINED 0xFFFFFFFFu
#define MAX_STACK 256

/* VR class by its two letters (index (c0 - 'A') * 26 + (c1 - 'A')): 0 none, 1 short, 2 long. */
static unsigned char vr_class[26 * 26];
static uint32_t sq_code;
static uint32_t top_tags[MAX_TAGS], nested_tags[MAX_TAGS], descend_tags[MAX_TAGS];
static Py_ssize_t top_count, nested_count, descend_count;
static long long max_value;
static long sequences_deepest;
static int configured;

static PyObject *s_size, *s_buf, *s_base, *s_refill, *s_get;

static inline unsigned vr_kind(uint32_t vr) {
    unsigned c0 = vr & 0xFF, c1 = vr >> 8;
    if (c0 < 'A' || c0 > 'Z' || c1 < 'A' || c1 > 'Z')
        return 0;
    return vr_class[(c0 - 'A') * 26 + (c1 - 'A')];
}

static inline int has_tag(const uint32_t *tags, Py_ssize_t count, uint32_t tag) {
    Py_ssize_t low = 0, high = count;
    while (low < high) {
        Py_ssize_t mid = (low + high) / 2;
        if (tags[mid] < tag)
            low = mid + 1;
        else
            high = mid;
    }
    return low < count && tags[low] == tag;
}

static inline uint32_t u16(const unsigned char *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8; }
static inline uint32_t u32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

PyDoc_STRVAR(configure_doc,
             "configure(short, long, sq, top, nested, descend, max_value, sequences_deepest)\n"
             "The VR codes (as little-endian numbers) and tags, each sorted, and limits of skim.py.");

static PyObject *configure(PyObject *self, PyObject *args) {
    PyObject *shorts, *longs, *tops, *nesteds, *descends;
    unsigned long sq;
    long long most;
    long deepest;
    if (!PyArg_ParseTuple(args, "OOkOOOLl:configure", &shorts, &longs, &sq, &tops, &nesteds,
                          &descends, &most, &deepest))
        return NULL;
    configured = 0;
    memset(vr_class, 0, sizeof vr_class);
    if (skim_mark_vrs(shorts, 1, vr_class) < 0 || skim_mark_vrs(longs, 2, vr_class) < 0)
        return NULL;
    if ((top_count = skim_numbers(tops, top_tags)) < 0 ||
        (nested_count = skim_numbers(nesteds, nested_tags)) < 0 ||
        (descend_count = skim_numbers(descends, descend_tags)) < 0)
        return NULL;
    sq_code = (uint32_t)sq;
    max_value = most;
    sequences_deepest = deepest;
    configured = 1;
    Py_RETURN_NONE;
}

/* -1 with an exception unless called with `want` arguments after `configure`. */
static int bad_call(Py_ssize_t nargs, Py_ssize_t want) {
    if (nargs != want)
        PyErr_Format(PyExc_TypeError, "expected %zd arguments, got %zd", want, nargs);
    else if (!configured)
        PyErr_SetString(PyExc_RuntimeError, "_skim_c.configure was not called");
    return PyErr_Occurred() ? -1 : 0;
}

/* skim._step_sequence_py: the end of the undefined-length sequence whose value starts at `off`,
 * where skim_sequence (not collecting) finds it without reading past `limit`; else -1. */
static long long step_sequence(const unsigned char *data, long long off, long long limit) {
    long depth = 0; /* open undefined-length items and sequences inside it: odd: in an item */
    long sequences = 1;
    while (off + 12 <= limit) {
        const unsigned char *p = data + off;
        uint32_t group = u16(p), element = u16(p + 2), vr = u16(p + 4);
        long long length = u16(p + 6);
        if (group == 0xFFFE) { /* an item or a delimiter: its 4-byte length is vr, length */
            off += 8;
            if (element == 0xE000 && !(depth & 1)) {
                if ((vr | (uint32_t)length << 16) == UNDEFINED)
                    depth += 1;
                else
                    off += (long long)(vr | (uint32_t)length << 16);
            } else if (element == 0xE00D && (depth & 1)) {
                depth -= 1;
            } else if (element == 0xE0DD && !(depth & 1)) {
                if (depth == 0)
                    return off;
                depth -= 1;
                sequences -= 1;
            } else {
                return -1;
            }
            continue;
        }
        if (!(depth & 1))
            return -1; /* an element where an item belongs */
        unsigned kind = vr_kind(vr);
        if (kind == 1) {
            off += 8 + length;
        } else if (vr == sq_code) {
            if (sequences == sequences_deepest)
                return -1;
            length = u32(p + 8);
            off += 12;
            if (length == UNDEFINED) {
                depth += 1;
                sequences += 1;
            } else {
                off += length;
            }
        } else if (kind == 2) {
            length = u32(p + 8);
            if (length == UNDEFINED)
                return -1;
            off += 12 + length;
        } else {
            return -1;
        }
    }
    return -1;
}

PyDoc_STRVAR(skim_doc, "skim(buf, off, limit, last, top) -> int: skim._skim_py in C.");

static PyObject *skim(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (bad_call(nargs, 5) < 0)
        return NULL;
    PyObject *buf = args[0], *top = args[4];
    long long off = PyLong_AsLongLong(args[1]);
    long long limit = PyLong_AsLongLong(args[2]);
    long long last = PyLong_AsLongLong(args[3]);
    if (PyErr_Occurred())
        return NULL;
    if (!PyDict_Check(top)) {
        PyErr_SetString(PyExc_TypeError, "top must be a dict");
        return NULL;
    }
    if (!PyBytes_Check(buf) || off < 0 || limit > PyBytes_GET_SIZE(buf))
        return PyLong_FromLongLong(off); /* not the walk's arguments: leave it to _walk */
    const unsigned char *data = (const unsigned char *)PyBytes_AS_STRING(buf);
    while (off + 12 <= limit) {
        const unsigned char *p = data + off;
        uint32_t tag = u16(p) << 16 | u16(p + 2);
        if ((long long)tag > last)
            break;
        uint32_t vr = u16(p + 4);
        long long length, value;
        unsigned kind = vr_kind(vr);
        if (kind == 1) {
            length = u16(p + 6);
            value = off + 8;
        } else if (kind == 2 || (vr == sq_code && !has_tag(descend_tags, descend_count, tag))) {
            uint32_t raw = u32(p + 8); /* a long VR, or a sequence _walk only steps over */
            if (raw == UNDEFINED) {
                long long following = vr == sq_code ? step_sequence(data, off + 12, limit) : -1;
                if (following < 0)
                    break;
                off = following;
                continue;
            }
            length = raw;
            value = off + 12;
        } else {
            break; /* a DESCEND SQ, an unknown or invalid VR */
        }
        long long following = value + length;
        if (following > limit)
            break;
        if (length <= max_value && vr != sq_code && has_tag(top_tags, top_count, tag)) {
            PyObject *key = PyLong_FromUnsignedLong(tag);
            PyObject *raw = PyBytes_FromStringAndSize((const char *)data + value, length);
            int failed = key == NULL || raw == NULL || PyDict_SetItem(top, key, raw) < 0;
            Py_XDECREF(key);
            Py_XDECREF(raw);
            if (failed)
                return NULL;
        }
        off = following;
    }
    return PyLong_FromLongLong(off);
}

/* The window's current chunk: a new reference to its bytes, or NULL with an exception; *decline
 * is set when it is not bytes (the Python loop would slice and unpack any buffer, but the walk
 * only ever holds bytes). */
static PyObject *chunk(PyObject *win, int *decline) {
    PyObject *buf = PyObject_GetAttr(win, s_buf);
    if (buf != NULL && !PyBytes_Check(buf)) {
        Py_DECREF(buf);
        *decline = 1;
        return NULL;
    }
    return buf;
}

static int attr_ll(PyObject *obj, PyObject *name, long long *out) {
    PyObject *value = PyObject_GetAttr(obj, name);
    if (value == NULL)
        return -1;
    *out = PyLong_AsLongLong(value);
    Py_DECREF(value);
    return (*out == -1 && PyErr_Occurred()) ? -1 : 0;
}

static int append_found(PyObject *found, uint32_t tag, PyObject *raw) {
    PyObject *pair = Py_BuildValue("(kO)", (unsigned long)tag, raw);
    if (pair == NULL)
        return -1;
    int result = PyList_Append(found, pair);
    Py_DECREF(pair);
    return result;
}

PyDoc_STRVAR(skim_sequence_doc,
             "skim_sequence(win, pos, length, collect, found) -> int: skim._skim_sequence_py in C.");

typedef struct {
    int in_sequence;
    long long end;
} Open;

/* Open a container (a sequence or an item) inside the current one; decline if too deep. */
#define PUSH(now_in_sequence, now_end)                                                          \
    do {                                                                                        \
        if (depth == MAX_STACK)                                                                 \
            goto done;                                                                          \
        stack[depth].in_sequence = in_sequence;                                                 \
        stack[depth++].end = end;                                                               \
        in_sequence = (now_in_sequence);                                                        \
        end = (now_end);                                                                        \
    } while (0)
#define POP()                                                                                   \
    do {                                                                                        \
        depth--;                                                                                \
        in_sequence = stack[depth].in_sequence;                                                 \
        end = stack[depth].end;                                                                 \
    } while (0)

static PyObject *skim_sequence(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (bad_call(nargs, 5) < 0)
        return NULL;
    PyObject *win = args[0], *found = args[4];
    long long pos = PyLong_AsLongLong(args[1]);
    long long length = PyLong_AsLongLong(args[2]);
    if (PyErr_Occurred())
        return NULL;
    int collect = PyObject_IsTrue(args[3]);
    if (collect < 0)
        return NULL;
    if (!PyList_Check(found)) {
        PyErr_SetString(PyExc_TypeError, "found must be a list");
        return NULL;
    }
    long long size, base, result = -1;
    if (attr_ll(win, s_size, &size) < 0)
        return NULL;
    if (length != UNDEFINED && pos + length > size)
        return PyLong_FromLong(-1);
    int decline = 0;
    PyObject *buf = chunk(win, &decline);
    if (buf == NULL)
        return decline ? PyLong_FromLong(-1) : NULL;
    if (attr_ll(win, s_base, &base) < 0)
        goto error;
    const unsigned char *data = (const unsigned char *)PyBytes_AS_STRING(buf);
    long long blen = PyBytes_GET_SIZE(buf);
    /* The innermost open container (a sequence or an item) and its end (-1: undefined length);
     * the enclosing ones on `stack`. */
    int in_sequence = 1;
    long long end = length == UNDEFINED ? -1 : pos + length;
    Open stack[MAX_STACK];
    int depth = 0;
    long sequences = 1;
    long long off = pos - base;
    for (;;) {
        if (end >= 0 && base + off >= end) {
            if (base + off != end)
                goto done;
            if (depth == 0) {
                result = end;
                goto done;
            }
            sequences -= in_sequence;
            POP();
            continue;
        }
        if (off < 0 || off + 12 > blen) {
            long long at = base + off;
            if (at + 8 > size)
                goto done;
            if (off < 0 || base + blen < size) {
                PyObject *where = PyLong_FromLongLong(at);
                if (where == NULL)
                    goto error;
                PyObject *called = PyObject_CallMethodOneArg(win, s_refill, where);
                Py_DECREF(where);
                if (called == NULL)
                    goto error;
                Py_DECREF(called);
                Py_DECREF(buf);
                buf = chunk(win, &decline);
                if (buf == NULL)
                    goto declined;
                data = (const unsigned char *)PyBytes_AS_STRING(buf);
                base = at;
                blen = PyBytes_GET_SIZE(buf);
                off = 0;
            }
            if (off + 8 > blen)
                goto done;
        }
        const unsigned char *p = data + off;
        uint32_t group = u16(p), element = u16(p + 2), vr = u16(p + 4);
        long long value_length = u16(p + 6), value;
        if (group == 0xFFFE) { /* an item or a delimiter: its 4-byte length is vr, value_length */
            if (element == 0xE000 && in_sequence) {
                off += 8;
                long long item_length = (long long)(vr | (uint32_t)value_length << 16);
                if (item_length == UNDEFINED)
                    PUSH(0, -1);
                else if (base + off + item_length > size)
                    goto done;
                else if (collect)
                    PUSH(0, base + off + item_length);
                else
                    off += item_length;
            } else if (element == 0xE00D && !in_sequence && end < 0) {
                off += 8;
                if (depth == 0)
                    goto done; /* unreachable: an item is always inside a sequence */
                POP();
            } else if (element == 0xE0DD && in_sequence && end < 0) {
                off += 8;
                if (depth == 0) {
                    result = base + off;
                    goto done;
                }
                sequences -= 1;
                POP();
            } else {
                goto done;
            }
            continue;
        }
        if (in_sequence)
            goto done;
        unsigned kind = vr_kind(vr);
        if (kind == 1) {
            value = off + 8;
        } else if (off + 12 > blen) {
            goto done;
        } else if (vr == sq_code) {
            value_length = u32(p + 8);
            if (sequences == sequences_deepest)
                goto done;
            off += 12;
            if (value_length == UNDEFINED) {
                PUSH(1, -1);
                sequences += 1;
            } else if (base + off + value_length > size) {
                goto done;
            } else if (collect) {
                PUSH(1, base + off + value_length);
                sequences += 1;
            } else {
                off += value_length;
            }
            continue;
        } else if (kind == 2) {
            value_length = u32(p + 8);
            if (value_length == UNDEFINED)
                goto done;
            value = off + 12;
        } else {
            goto done;
        }
        long long following = value + value_length;
        uint32_t tag = group << 16 | element;
        int kept = collect && value_length <= max_value && has_tag(nested_tags, nested_count, tag);
        if (following <= blen) {
            if (kept) {
                PyObject *raw = PyBytes_FromStringAndSize((const char *)data + value, value_length);
                if (raw == NULL)
                    goto error;
                int failed = append_found(found, tag, raw);
                Py_DECREF(raw);
                if (failed < 0)
                    goto error;
            }
            off = following;
            continue;
        }
        /* A value that runs past the chunk: step over it, reading it only if it is kept. */
        following += base;
        if (following > size)
            goto done;
        if (kept) {
            PyObject *at = PyLong_FromLongLong(base + value);
            PyObject *count = PyLong_FromLongLong(value_length);
            PyObject *raw = at && count ? PyObject_CallMethodObjArgs(win, s_get, at, count, NULL)
                                        : NULL;
            Py_XDECREF(at);
            Py_XDECREF(count);
            if (raw == NULL)
                goto error;
            int failed = append_found(found, tag, raw);
            Py_DECREF(raw);
            if (failed < 0)
                goto error;
            Py_DECREF(buf);
            buf = chunk(win, &decline);
            if (buf == NULL)
                goto declined;
            if (attr_ll(win, s_base, &base) < 0)
                goto error;
            data = (const unsigned char *)PyBytes_AS_STRING(buf);
            blen = PyBytes_GET_SIZE(buf);
        }
        off = following - base;
    }
done:
    Py_DECREF(buf);
    return PyLong_FromLongLong(result);
declined:
    if (!decline)
        return NULL; /* buf is NULL: the exception of the attribute lookup */
    return PyLong_FromLong(-1);
error:
    Py_XDECREF(buf);
    return NULL;
}

static PyMethodDef methods[] = {
    {"configure", configure, METH_VARARGS, configure_doc},
    {"skim", (PyCFunction)(void (*)(void))skim, METH_FASTCALL, skim_doc},
    {"skim_sequence", (PyCFunction)(void (*)(void))skim_sequence, METH_FASTCALL,
     skim_sequence_doc},
    {"scan_values", (PyCFunction)(void (*)(void))skim_scan_values, METH_FASTCALL, skim_scan_values_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_skim_c", "The walk's element loops in C (see skim.py).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__skim_c(void) {
    s_size = PyUnicode_InternFromString("size");
    s_buf = PyUnicode_InternFromString("buf");
    s_base = PyUnicode_InternFromString("base");
    s_refill = PyUnicode_InternFromString("refill");
    s_get = PyUnicode_InternFromString("get");
    if (!s_size || !s_buf || !s_base || !s_refill || !s_get)
        return NULL;
    return PyModule_Create(&module);
}
