/* What the three files of the _dicomwalk_c extension share (internal; see _dicomwalk_c.c).
 *
 * The extension is one module built from _dicomwalk_c.c (the Element type, the VR tables,
 * texts and the module), _dicomwalk_elements.c (elements, sequences, items, the file meta) and
 * _dicomwalk_walk.c (the top-level walk). What crosses between them is declared here and marked
 * INTERNAL: hidden from the shared object's exported symbols, which stay PyInit__dicomwalk_c
 * alone, so that no name here can clash with or be interposed by another library's.
 */
#pragma once

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#if defined(__GNUC__)
#define INTERNAL __attribute__((visibility("hidden")))
#else
#define INTERNAL
#endif

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

INTERNAL extern PyTypeObject ElementType; /* _dicomwalk_c.c */

/* -- VRs (the tables are filled by PyInit__dicomwalk_c) ----------------------------------- */

/* two VR bytes -> 0 unknown, 1 short (16-bit length), 2 long (reserved + 32-bit length) */
INTERNAL extern unsigned char vr_kind[65536];
INTERNAL extern PyObject *vr_name[65536]; /* interned str for known VRs */

static inline unsigned vr_key(const unsigned char *p) { return (unsigned)p[0] << 8 | p[1]; }
static inline unsigned u16(const unsigned char *p) { return (unsigned)p[0] | (unsigned)p[1] << 8; }
static inline uint32_t u32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* -- the walk's state --------------------------------------------------------------------- */

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

static inline int cannot(Ctx *c, const char *why) {
    c->why = why;
    return CANNOT;
}

/* _dicomwalk_elements.c */
INTERNAL int cannot_vr(Ctx *c, const unsigned char *p);
INTERNAL int element_at(Ctx *c, Py_ssize_t pos, Raw *out);
INTERNAL int meta_walk(Ctx *c, Raw **meta_p, int *count, Py_ssize_t *out_pos);

/* _dicomwalk_walk.c */
INTERNAL PyObject *walk(PyObject *self, PyObject *args);
