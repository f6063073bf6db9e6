//! Running the `runner-agent` binary in a throwaway world of its own.
