//! diffkeeper-bench: measures what recording costs, side by side with not recording and strace.
fn main() {}
