/* The sandbox's file writes for a whole hand-over with the GIL given up once
 * (xnat_sandbox/entrywriter.py's `write_files_python`, in C).
 *
 * Why: a writer thread made three system calls a file (open, writev, close), each giving the
 * GIL up and taking it back from the import's request thread, which holds it for most of the
 * import: 11,000 system calls and 23,000 futex calls for a 500 MB import of 3,676 files, and
 * the writers waited for the GIL between the calls instead of writing. Here a hand-over of up
 * to 32 files is written in one call that takes the GIL back once.
 *
 * write_files(items) -> [(fd, written, errno), ...]
 *   items: [(target, buffers, close), ...], target an open descriptor (int) or a path to create
 *   (str or bytes; opened as open(path, "wb") opens it, not inherited by children), buffers a
 *   list of objects with the buffer protocol, written in order; close: close the file after.
 *   One answer an item, in order, stopping after the first item that fails: fd is the file's
 *   descriptor while it stays open (-1 once closed or never opened), written the bytes written
 *   by this call, errno 0 or the error (the caller raises OSError from it).
 *
 * Nothing here comes from xnatdrop: the sandbox stands in for XNAT and writes files itself.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sys/uio.h>
#include <unistd.h>

typedef struct {
    int fd;             /* -1: to open from path */
    const char *path;   /* borrowed from a bytes object kept alive by the caller */
    Py_buffer *buffers;
    Py_ssize_t count;   /* buffers acquired */
    int close_after;
    long long written;
    int error;
} Item;

/* Write every buffer of an item from `first` on, `skip` bytes into it; continue short writes. */
static int write_buffers(Item *item) {
    Py_ssize_t first = 0;
    size_t skip = 0;
    while (first < item->count) {
        struct iovec vectors[IOV_MAX];
        int used = 0;
        for (Py_ssize_t i = first; i < item->count && used < IOV_MAX; i++, used++) {
            size_t from = i == first ? skip : 0;
            vectors[used].iov_base = (char *)item->buffers[i].buf + from;
            vectors[used].iov_len = (size_t)item->buffers[i].len - from;
        }
        ssize_t done = writev(item->fd, vectors, used);
        if (done < 0) {
            if (errno == EINTR)
                continue;
            return errno;
        }
        item->written += done;
        size_t left = (size_t)done;
        while (first < item->count && left >= (size_t)item->buffers[first].len - skip) {
            left -= (size_t)item->buffers[first].len - skip;
            skip = 0;
            first++;
        }
        skip += left;
    }
    return 0;
}

/* Open (when given a path), write and close (when asked) one item; 0 or an errno. */
static int write_item(Item *item) {
    if (item->fd < 0) {
        item->fd = open(item->path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
        if (item->fd < 0)
            return errno;
    }
    int error = write_buffers(item);
    if (error || !item->close_after)
        return error;
    int fd = item->fd;
    item->fd = -1; /* closed even when close fails: the descriptor is gone either way */
    return close(fd) < 0 ? errno : 0;
}

static void release(Item *items, Py_ssize_t count) {
    for (Py_ssize_t i = 0; i < count; i++) {
        for (Py_ssize_t j = 0; j < items[i].count; j++)
            PyBuffer_Release(&items[i].buffers[j]);
        PyMem_Free(items[i].buffers);
    }
    PyMem_Free(items);
}

/* Read one (target, buffers, close) tuple into `item`; -1 with an exception set on bad input. */
static int parse_item(PyObject *tuple, Item *item, PyObject *paths) {
    PyObject *target, *buffers;
    int close_after;
    if (!PyTuple_Check(tuple) ||
        !PyArg_ParseTuple(tuple, "OO!p", &target, &PyList_Type, &buffers, &close_after)) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "an item is (target, [buffers], close)");
        return -1;
    }
    item->fd = -1;
    item->close_after = close_after;
    if (PyLong_Check(target)) {
        long fd = PyLong_AsLong(target);
        if (fd < 0 || fd > INT_MAX) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "not a file descriptor");
            return -1;
        }
        item->fd = (int)fd;
    } else {
        PyObject *encoded = NULL;
        if (!PyUnicode_FSConverter(target, &encoded))
            return -1;
        int kept = PyList_Append(paths, encoded);
        Py_DECREF(encoded); /* the list holds it until the writes are done */
        if (kept < 0)
            return -1;
        item->path = PyBytes_AS_STRING(encoded);
    }
    Py_ssize_t count = PyList_GET_SIZE(buffers);
    item->buffers = PyMem_Calloc(count ? (size_t)count : 1, sizeof(Py_buffer));
    if (item->buffers == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (; item->count < count; item->count++)
        if (PyObject_GetBuffer(PyList_GET_ITEM(buffers, item->count),
                               &item->buffers[item->count], PyBUF_SIMPLE) < 0)
            return -1;
    return 0;
}

static PyObject *write_files(PyObject *module, PyObject *list) {
    if (!PyList_Check(list)) {
        PyErr_SetString(PyExc_TypeError, "write_files takes a list of items");
        return NULL;
    }
    Py_ssize_t count = PyList_GET_SIZE(list);
    Item *items = PyMem_Calloc(count ? (size_t)count : 1, sizeof(Item));
    PyObject *paths = PyList_New(0);
    if (items == NULL || paths == NULL) {
        PyMem_Free(items);
        Py_XDECREF(paths);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        if (parse_item(PyList_GET_ITEM(list, i), &items[i], paths) < 0) {
            release(items, i + 1);
            Py_DECREF(paths);
            return NULL;
        }
    }
    Py_ssize_t done = 0;
    Py_BEGIN_ALLOW_THREADS
    while (done < count && (items[done].error = write_item(&items[done])) == 0)
        done++;
    Py_END_ALLOW_THREADS
    Py_ssize_t answered = done < count ? done + 1 : count; /* the failed item answers too */
    PyObject *answers = PyList_New(answered);
    for (Py_ssize_t i = 0; answers != NULL && i < answered; i++) {
        PyObject *answer = Py_BuildValue("(iLi)", items[i].fd, items[i].written, items[i].error);
        if (answer == NULL)
            Py_CLEAR(answers);
        else
            PyList_SET_ITEM(answers, i, answer);
    }
    release(items, count);
    Py_DECREF(paths);
    return answers;
}

static PyMethodDef methods[] = {
    {"write_files", write_files, METH_O,
     "write_files(items) -> [(fd, written, errno)]: open, write and close files, GIL released"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "xnat_sandbox._entrywriter_c",
    "The sandbox's file writes for a whole hand-over with the GIL given up once.", -1, methods,
};

PyMODINIT_FUNC PyInit__entrywriter_c(void) { return PyModule_Create(&module); }
