//! eventyard stores on PostgreSQL.
