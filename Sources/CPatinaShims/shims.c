#include "CPatinaShims.h"
#include <ngtcp2/ngtcp2.h>

int patina_sqlite3_bind_text_transient(sqlite3_stmt *stmt, int index, const char *text, int length) {
    return sqlite3_bind_text(stmt, index, text, length, SQLITE_TRANSIENT);
}

int patina_sqlite3_bind_blob_transient(sqlite3_stmt *stmt, int index, const void *bytes, int length) {
    return sqlite3_bind_blob(stmt, index, bytes, length, SQLITE_TRANSIENT);
}

void patina_sqlite3_result_text_transient(sqlite3_context *ctx, const char *text, int length) {
    sqlite3_result_text(ctx, text, length, SQLITE_TRANSIENT);
}

void patina_sqlite3_result_blob_transient(sqlite3_context *ctx, const void *bytes, int length) {
    sqlite3_result_blob(ctx, bytes, length, SQLITE_TRANSIENT);
}

const char *patina_ngtcp2_version_string(void) {
    const ngtcp2_info *info = ngtcp2_version(0);
    return info ? info->version_str : "unknown";
}
