/* The parts of the `_skim_c` module that walk no elements: the per-frame byte scan
 * (`skim._scan_values_py`: a `memmem` per match) and the reading of `configure`'s lists. A file
 * of its own beside `_skim_c.c` (the element loops, and the module) so that each stays under
 * 500 lines; they share only what `_skim_c.h` declares.
 */
#define _GNU_SOURCE /* memmem */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#include "_skim_c.h"

/* A sequence of ints (at most MAX_TAGS, each below 2**32) into `out`; its length or -1. */
Py_ssize_t skim_numbers(PyObject *seq, uint32_t *out) {
    PyObject *fast = PySequence_Fast(seq, "a sequence of ints");
    if (fast == NULL)
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    for (Py_ssize_t i = 0; i < n && !PyErr_Occurred(); i++) {
        unsigned long number = PyLong_AsUnsignedLong(PySequence_Fast_GET_ITEM(fast, i));
        if (i >= MAX_TAGS || number > 0xFFFFFFFFul || (i > 0 && number <= out[i - 1]))
            PyErr_SetString(PyExc_ValueError, "at most 64 increasing numbers below 2**32");
        else
            out[i] = (uint32_t)number;
    }
    Py_DECREF(fast);
    return PyErr_Occurred() ? -1 : n;
}

/* The VRs of `seq` (two capital letters each, as little-endian numbers) marked `kind` in
 * `vr_class` (index (c0 - 'A') * 26 + (c1 - 'A')); 0, or -1 with an exception. */
int skim_mark_vrs(PyObject *seq, unsigned char kind, unsigned char *vr_class) {
    uint32_t vrs[MAX_TAGS];
    Py_ssize_t n = skim_numbers(seq, vrs);
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned c0 = vrs[i] & 0xFF, c1 = vrs[i] >> 8;
        if (c0 < 'A' || c0 > 'Z' || c1 < 'A' || c1 > 'Z') {
            PyErr_SetString(PyExc_ValueError, "a VR is two capital letters");
            return -1;
        }
        vr_class[(c0 - 'A') * 26 + (c1 - 'A')] = kind;
    }
    return n < 0 ? -1 : 0;
}

const char skim_scan_values_doc[] =
    "scan_values(region, pattern) -> list[bytes]: skim._scan_values_py in C.";

PyObject *skim_scan_values(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyBytes_Check(args[0]) || !PyBytes_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "scan_values takes two bytes objects");
        return NULL;
    }
    const char *region = PyBytes_AS_STRING(args[0]), *pattern = PyBytes_AS_STRING(args[1]);
    Py_ssize_t size = PyBytes_GET_SIZE(args[0]), width = PyBytes_GET_SIZE(args[1]);
    PyObject *values = PyList_New(0);
    if (values == NULL || width == 0)
        return values; /* an empty pattern: never given (re would match everywhere) */
    Py_ssize_t from = 0, after = 0;
    while (from <= size - width) {
        const char *hit = memmem(region + from, size - from, pattern, width);
        if (hit == NULL)
            break;
        Py_ssize_t found = hit - region;
        from = found + width; /* re's matches do not overlap */
        if (found < after)
            continue;
        if (found + 8 > size) { /* the length bytes past the region: as region[found + 7] */
            Py_DECREF(values);
            PyErr_SetString(PyExc_IndexError, "index out of range");
            return NULL;
        }
        const unsigned char *length = (const unsigned char *)region + found + 6;
        after = found + 8 + (length[0] | length[1] << 8);
        PyObject *value = PyBytes_FromStringAndSize(region + found + 8,
                                                    (after < size ? after : size) - found - 8);
        if (value == NULL || PyList_Append(values, value) < 0) {
            Py_XDECREF(value);
            Py_DECREF(values);
            return NULL;
        }
        Py_DECREF(value);
    }
    return values;
}
