//! eventyard: event backbone for Rust services (facade).
