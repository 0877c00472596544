//! eventyard testkit: conformance suites every backend must pass, and service helpers.
