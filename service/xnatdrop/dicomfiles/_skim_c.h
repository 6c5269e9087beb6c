/* What `_skim_c.c` (the module: the element loops) uses of `_skim_parts.c`. */
#ifndef XNATDROP_SKIM_C_H
#define XNATDROP_SKIM_C_H

#include <Python.h>
#include <stdint.h>

#define MAX_TAGS 64 /* the most tags (or VRs) in one of configure's lists */

Py_ssize_t skim_numbers(PyObject *seq, uint32_t *out);
int skim_mark_vrs(PyObject *seq, unsigned char kind, unsigned char *vr_class);

extern const char skim_scan_values_doc[];
PyObject *skim_scan_values(PyObject *self, PyObject *const *args, Py_ssize_t nargs);

#endif
