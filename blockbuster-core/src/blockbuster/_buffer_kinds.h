/* The element kinds of the buffers the C loops read (_runkernels.c, _labelkernels.c): which
 * native numeric type a buffer's format names. */

#ifndef BLOCKBUSTER_BUFFER_KINDS_H
#define BLOCKBUSTER_BUFFER_KINDS_H

#include <Python.h>
#include <string.h>

typedef enum {
    K_BOOL, K_I8, K_U8, K_I16, K_U16, K_I32, K_U32, K_I64, K_U64, K_F32, K_F64, K_NONE
} Kind;

static const char *KIND_NAMES[] = {
    "bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
    "float32", "float64", "unsupported"
};

/* The element kind of a buffer format of one native item ("H", "=d", "<q", ...): the sign
 * class from the letter, the width from the item size. */
static Kind kind_of(const char *format, Py_ssize_t itemsize) {
    if (format == NULL) {
        format = "B";
    }
    if (*format == '@' || *format == '=') {
        format++;
    } else if (*format == '<' || *format == '>' || *format == '!') {
#if PY_LITTLE_ENDIAN
        if (*format != '<') return K_NONE;
#else
        if (*format == '<') return K_NONE;
#endif
        format++;
    }
    if (format[0] == '\0' || format[1] != '\0') {
        return K_NONE;
    }
    char c = format[0];
    if (c == '?' && itemsize == 1) {
        return K_BOOL;
    }
    if (strchr("bhilqn", c) != NULL) {
        switch (itemsize) {
            case 1: return K_I8;
            case 2: return K_I16;
            case 4: return K_I32;
            case 8: return K_I64;
        }
    } else if (strchr("BHILQN", c) != NULL) {
        switch (itemsize) {
            case 1: return K_U8;
            case 2: return K_U16;
            case 4: return K_U32;
            case 8: return K_U64;
        }
    } else if (c == 'f' && itemsize == 4) {
        return K_F32;
    } else if (c == 'd' && itemsize == 8) {
        return K_F64;
    }
    return K_NONE;
}

#endif
