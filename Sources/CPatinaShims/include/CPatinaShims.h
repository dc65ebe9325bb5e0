// Plain C functions for what Swift cannot import from the C libraries:
// macros that expand to casts, and variadic callbacks. Each is a thin,
// side-effect-free wrapper; see shims.c.
#ifndef PATINA_SHIMS_H
#define PATINA_SHIMS_H

#include <sqlite3.h>
#include <stdint.h>

// SQLITE_TRANSIENT is `((sqlite3_destructor_type)-1)`, which Swift cannot import.
int patina_sqlite3_bind_text_transient(sqlite3_stmt *stmt, int index, const char *text, int length);
int patina_sqlite3_bind_blob_transient(sqlite3_stmt *stmt, int index, const void *bytes, int length);
void patina_sqlite3_result_text_transient(sqlite3_context *ctx, const char *text, int length);
void patina_sqlite3_result_blob_transient(sqlite3_context *ctx, const void *bytes, int length);

// The library's runtime version string (ngtcp2 reports it through a struct).
const char *patina_ngtcp2_version_string(void);

#endif
