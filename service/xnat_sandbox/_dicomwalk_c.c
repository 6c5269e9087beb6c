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
 *
 * The extension's files: this one (the Element type, the VR tables, texts and the module),
 * _dicomwalk_elements.c (elements, sequences, items and the file meta: dicomwalk._element and
 * its helpers), _dicomwalk_walk.c (the top-level walk and its entry point) and _dicomwalk_c.h
 * (what they share).
 */
#include "_dicomwalk_c.h"

#include <structmember.h>

/* -- Element: the same attributes as dicomwalk.Element ---------------------------------- */

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

PyTypeObject ElementType = {
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
unsigned char vr_kind[65536]; /* what they hold: _dicomwalk_c.h */
PyObject *vr_name[65536];

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
