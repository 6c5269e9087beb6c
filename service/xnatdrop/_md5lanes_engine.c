/* xnatdrop._md5lanes.Engine: the MD5s of a stream of messages, the lanes kept full across calls.

   Why: hashed a run of the upload zip at a time, the files of one run fill the lanes, and a
   run holds at most 4 MiB: six files of 600 kB fill six of sixteen lanes. On the benchmark's 500 MB session
   the lanes were busy half the time (0.49), and making runs larger to fill them cost more in
   latency and cache than it saved. An Engine keeps the messages its lanes have not finished
   for the next call instead, and hashes only while every lane has one, so the lanes stay full
   whatever the runs hold; run(drain=True) finishes the rest. A message may be several buffers
   (a large file, read in 1 MiB pieces): each of its segments in turn, in one lane. Each
   buffer is held (PyBUF_SIMPLE: it cannot be resized or freed) from add() until run()
   returns its message's digest. */

#include "_md5lanes.h"

typedef struct {
    PyObject_HEAD
    Lanes lanes;
    Py_ssize_t n, cap, next; /* messages [0, n) held; [next, n) not yet in a lane */
    Py_ssize_t segs, seg_cap; /* their segments: message i's are first[i] to first[i + 1] */
    Py_buffer **views;        /* each segment's buffer */
    const uint8_t **data;
    Py_ssize_t *sizes;
    Py_ssize_t *first, *tags; /* first: n + 1 entries */
    uint8_t *digests;         /* 16 bytes a message */
    Py_ssize_t held;          /* bytes of the messages held */
    int running; /* hashing, the GIL released: no other call until it is done */
} Engine;

static int engine_grow(Engine *self, Py_ssize_t more, Py_ssize_t more_segs);

static int engine_init(Engine *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"width", NULL};
    int width = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|i", keywords, &width))
        return -1;
    if (self->lanes.width) {
        PyErr_SetString(PyExc_RuntimeError, "an Engine is made once");
        return -1;
    }
    int widest = md5lanes_width();
    if (widest == 0) {
        PyErr_SetString(PyExc_RuntimeError, "an Engine needs AVX2, which this CPU lacks");
        return -1;
    }
    if (width == 0)
        width = widest;
    if ((width != 8 && width != 16) || width > widest) {
        PyErr_Format(PyExc_ValueError, "width must be 8 or %d on this CPU, not %d", widest,
                     width);
        return -1;
    }
    md5lanes_reset(&self->lanes, width);
    return engine_grow(self, 0, 0); /* first[0] = 0: no message yet */
}

static int engine_busy(Engine *self)
{
    if (self->running)
        PyErr_SetString(PyExc_RuntimeError, "the Engine is hashing in another thread");
    return self->running;
}

/* One of the engine's arrays made room for `cap` items of `item` bytes; -1 if it could not. */
static int grow(void **array, size_t item, Py_ssize_t cap)
{
    void *grown = PyMem_Realloc(*array, item * (size_t)cap);
    if (grown == NULL)
        return -1;
    *array = grown;
    return 0;
}

/* Room for `more` messages beyond n and `more_segs` segments beyond segs; -1 with
   MemoryError. */
static int engine_grow(Engine *self, Py_ssize_t more, Py_ssize_t more_segs)
{
    if (self->n + more > self->cap || self->first == NULL) {
        Py_ssize_t cap = self->cap ? self->cap : 64;
        while (cap < self->n + more)
            cap *= 2;
        if (grow((void **)&self->tags, sizeof(Py_ssize_t), cap) < 0 ||
            grow((void **)&self->first, sizeof(Py_ssize_t), cap + 1) < 0 ||
            grow((void **)&self->digests, 16, cap) < 0)
            goto no_memory; /* those that grew keep their room: cap is what all have */
        if (self->cap == 0)
            self->first[0] = 0;
        self->cap = cap;
    }
    if (self->segs + more_segs > self->seg_cap) {
        Py_ssize_t cap = self->seg_cap ? self->seg_cap : 64;
        while (cap < self->segs + more_segs)
            cap *= 2;
        if (grow((void **)&self->views, sizeof(Py_buffer *), cap) < 0 ||
            grow((void **)&self->data, sizeof(uint8_t *), cap) < 0 ||
            grow((void **)&self->sizes, sizeof(Py_ssize_t), cap) < 0)
            goto no_memory;
        self->seg_cap = cap;
    }
    return 0;
no_memory:
    PyErr_NoMemory();
    return -1;
}

PyDoc_STRVAR(add_doc,
"add(tags, messages)\n\n"
"Queue the messages, each named by the int of `tags` at the same position: a message is a\n"
"buffer (bytes-like, contiguous) or a sequence of them hashed as one (a file read in pieces),\n"
"every one but its last a multiple of 64 bytes. Each buffer is held until run() returns its\n"
"message's digest.");

/* Take the buffer `item` as segment self->segs + *added, its size checked (`last`: a message's
   last segment, any size); -1 with an error set. */
static int take_segment(Engine *self, PyObject *item, Py_ssize_t *added, int last)
{
    Py_buffer *view = PyMem_Malloc(sizeof(Py_buffer));
    if (view == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    if (PyObject_GetBuffer(item, view, PyBUF_SIMPLE) < 0) {
        PyMem_Free(view);
        return -1;
    }
    if (!last && view->len % 64) {
        PyErr_Format(PyExc_ValueError,
                     "a message's buffers but its last must be whole 64-byte blocks, not %zd "
                     "bytes", view->len);
        PyBuffer_Release(view);
        PyMem_Free(view);
        return -1;
    }
    Py_ssize_t at = self->segs + (*added)++;
    self->views[at] = view;
    self->data[at] = view->buf;
    self->sizes[at] = view->len;
    return 0;
}

/* Take message `item` (a buffer or a sequence of them) as message self->n + added, its
   segments after the `*segs_added` this call took; -1 with an error set. */
static int take_message(Engine *self, PyObject *tag, PyObject *item, Py_ssize_t added,
                        Py_ssize_t *segs_added)
{
    Py_ssize_t number = PyLong_AsSsize_t(tag);
    if (number == -1 && PyErr_Occurred())
        return -1;
    PyObject *parts = NULL;
    Py_ssize_t count = 1;
    if (!PyObject_CheckBuffer(item)) {
        parts = PySequence_Fast(item, "a message must be a buffer or a sequence of buffers");
        if (parts == NULL)
            return -1;
        count = PySequence_Fast_GET_SIZE(parts);
        if (count == 0) {
            PyErr_SetString(PyExc_ValueError, "a message needs one buffer at least");
            Py_DECREF(parts);
            return -1;
        }
    }
    int failed = engine_grow(self, added + 1, *segs_added + count) < 0;
    for (Py_ssize_t i = 0; !failed && i < count; i++) {
        PyObject *part = parts ? PySequence_Fast_GET_ITEM(parts, i) : item;
        failed = take_segment(self, part, segs_added, i == count - 1) < 0;
    }
    Py_XDECREF(parts);
    if (failed)
        return -1;
    Py_ssize_t at = self->n + added;
    self->tags[at] = number;
    self->first[at + 1] = self->segs + *segs_added;
    return 0;
}

static PyObject *engine_add(Engine *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "add(tags, messages)");
        return NULL;
    }
    if (engine_busy(self))
        return NULL;
    PyObject *tags = PySequence_Fast(args[0], "tags must be a sequence of int");
    PyObject *items = tags ? PySequence_Fast(args[1], "messages must be a sequence") : NULL;
    Py_ssize_t count = tags ? PySequence_Fast_GET_SIZE(tags) : 0, added = 0, segs_added = 0;
    if (items != NULL && count != PySequence_Fast_GET_SIZE(items))
        PyErr_Format(PyExc_ValueError, "%zd tags but %zd messages", count,
                     PySequence_Fast_GET_SIZE(items));
    else if (items != NULL)
        for (; added < count; added++)
            if (take_message(self, PySequence_Fast_GET_ITEM(tags, added),
                             PySequence_Fast_GET_ITEM(items, added), added, &segs_added) < 0)
                break;
    Py_XDECREF(tags);
    Py_XDECREF(items);
    if (PyErr_Occurred()) { /* all or none: release what this call took */
        for (Py_ssize_t g = self->segs; g < self->segs + segs_added; g++) {
            PyBuffer_Release(self->views[g]);
            PyMem_Free(self->views[g]);
        }
        return NULL;
    }
    for (Py_ssize_t g = self->segs; g < self->segs + segs_added; g++)
        self->held += self->sizes[g];
    self->n += count;
    self->segs += segs_added;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(run_doc,
"run(drain=False) -> list[tuple[int, bytes]]\n\n"
"Hash while every lane has a message (with drain, until every message is done); the\n"
"(tag, digest) of each message finished, in the order they were added. Releases the GIL\n"
"while it hashes.");

static PyObject *engine_run(Engine *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"drain", NULL};
    int drain = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|p", keywords, &drain))
        return NULL;
    if (engine_busy(self))
        return NULL;
    self->running = 1;
    Py_BEGIN_ALLOW_THREADS
    md5lanes_hash(&self->lanes, self->data, self->sizes, self->first, self->n, &self->next,
                  self->digests, drain);
    Py_END_ALLOW_THREADS
    self->running = 0;
    /* Done: taken by a lane (before `next`) and in none now. Their digests are returned
       first; only then are they dropped (on an error nothing is, and the next call returns
       them), the others moved down and their lanes told their new place. */
    int width = self->lanes.width;
    Py_ssize_t lane_of_span[MAX_LANES];
    for (int l = 0; l < width; l++)
        lane_of_span[l] = self->lanes.lane[l].span;
    PyObject *finished = PyList_New(0);
    for (Py_ssize_t i = 0; finished != NULL && i < self->next; i++) {
        int in_lane = 0;
        for (int l = 0; l < width; l++)
            in_lane |= lane_of_span[l] == i;
        if (in_lane)
            continue;
        PyObject *item = Py_BuildValue("(ny#)", self->tags[i], self->digests + 16 * i,
                                       (Py_ssize_t)16);
        if (item == NULL || PyList_Append(finished, item) < 0)
            Py_CLEAR(finished);
        Py_XDECREF(item);
    }
    if (finished == NULL)
        return NULL;
    Py_ssize_t kept = 0, started = 0, segs_kept = 0;
    for (Py_ssize_t i = 0; i < self->n; i++) {
        Py_ssize_t begin = self->first[i], end = self->first[i + 1];
        int lane = -1;
        for (int l = 0; l < width; l++)
            if (lane_of_span[l] == i)
                lane = l;
        if (i < self->next && lane < 0) { /* done */
            for (Py_ssize_t g = begin; g < end; g++) {
                self->held -= self->sizes[g];
                PyBuffer_Release(self->views[g]);
                PyMem_Free(self->views[g]);
            }
            continue;
        }
        if (lane >= 0) {
            Lane *moved = &self->lanes.lane[lane];
            moved->span = kept;
            moved->seg -= begin - segs_kept;
            moved->seg_end -= begin - segs_kept;
            started++;
        }
        for (Py_ssize_t g = begin; g < end; g++, segs_kept++) {
            self->views[segs_kept] = self->views[g];
            self->data[segs_kept] = self->data[g];
            self->sizes[segs_kept] = self->sizes[g];
        }
        self->tags[kept] = self->tags[i];
        self->first[++kept] = segs_kept;
    }
    self->n = kept;
    self->segs = segs_kept;
    self->next = started;
    return finished;
}

static Py_ssize_t engine_len(Engine *self)
{
    return self->n;
}

static PyObject *engine_held(Engine *self, void *closure)
{
    (void)closure;
    return PyLong_FromSsize_t(self->held);
}

static PyObject *engine_width(Engine *self, void *closure)
{
    (void)closure;
    return PyLong_FromLong(self->lanes.width);
}

static void engine_dealloc(Engine *self)
{
    for (Py_ssize_t g = 0; g < self->segs; g++) {
        PyBuffer_Release(self->views[g]);
        PyMem_Free(self->views[g]);
    }
    PyMem_Free(self->views);
    PyMem_Free((void *)self->data);
    PyMem_Free(self->sizes);
    PyMem_Free(self->first);
    PyMem_Free(self->tags);
    PyMem_Free(self->digests);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef engine_methods[] = {
    {"add", (PyCFunction)(void (*)(void))engine_add, METH_FASTCALL, add_doc},
    {"run", (PyCFunction)(void (*)(void))engine_run, METH_VARARGS | METH_KEYWORDS, run_doc},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef engine_getset[] = {
    {"held", (getter)engine_held, NULL, "bytes of the messages held (queued or in a lane)", NULL},
    {"width", (getter)engine_width, NULL, "its lanes: how many messages it hashes at once", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PySequenceMethods engine_sequence = {.sq_length = (lenfunc)engine_len};

PyTypeObject md5lanes_EngineType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "xnatdrop._md5lanes.Engine",
    .tp_doc = "Engine(width=0): MD5s of a stream of messages, the SIMD lanes kept full across "
              "calls (width 0: 16 with AVX-512, else 8). Not for two threads at once.",
    .tp_basicsize = sizeof(Engine),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)engine_init,
    .tp_dealloc = (destructor)engine_dealloc,
    .tp_methods = engine_methods,
    .tp_getset = engine_getset,
    .tp_as_sequence = &engine_sequence,
};
