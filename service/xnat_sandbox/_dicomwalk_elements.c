/* The sandbox's header walker in C (see _dicomwalk_c.c): reading one element, and the
 * sequences and items inside it (dicomwalk._element, _sequence, _item), and the file meta
 * (dicomwalk._meta). Nested elements are only checked and skipped; only top-level elements
 * become Elements (in _dicomwalk_walk.c).
 */
#include "_dicomwalk_c.h"

int cannot_vr(Ctx *c, const unsigned char *p) {
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
int element_at(Ctx *c, Py_ssize_t pos, Raw *out) {
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
int meta_walk(Ctx *c, Raw **meta_p, int *count, Py_ssize_t *out_pos) {
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
