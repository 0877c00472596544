//! yard: the eventyard command-line tool.
