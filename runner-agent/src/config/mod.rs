//! Job files and host configuration (DESIGN.md 3.2 and 3.3).
