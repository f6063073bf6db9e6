//! The test world of DESIGN.md section 8: a "host" namespace with no default route, an
//! "internet" namespace with the tests own servers, all built and torn down by the tests.
