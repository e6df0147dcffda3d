/* The module definition the C loop modules share (_runkernels.c, _labelkernels.c):
 * KERNEL_MODULE(name, doc, methods) defines the module and its PyInit_<name>. */

#ifndef BLOCKBUSTER_KERNEL_MODULE_H
#define BLOCKBUSTER_KERNEL_MODULE_H

#include <Python.h>

/* No module state, and the kernels touch only their arguments: safe without a GIL too. */
static PyModuleDef_Slot kernel_module_slots[] = {
#ifdef Py_GIL_DISABLED
    {Py_mod_gil, Py_MOD_GIL_NOT_USED},
#endif
    {0, NULL},
};

#define KERNEL_MODULE(name, doc, methods)                                                \
    static struct PyModuleDef module = {                                                 \
        PyModuleDef_HEAD_INIT, #name, doc, 0, methods, kernel_module_slots, NULL, NULL,  \
        NULL,                                                                            \
    };                                                                                   \
    PyMODINIT_FUNC PyInit_##name(void) { return PyModuleDef_Init(&module); }

#endif
