#include <sqlite3.h>

// sqlite3_config is variadic, which Swift cannot call. Turning off memory
// statistics removes a global mutex from every SQLite allocation; it must run
// before SQLite initializes (later calls return SQLITE_MISUSE, harmlessly).
static inline int patina_sqlite3_disable_memstatus(void) {
    return sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);
}
