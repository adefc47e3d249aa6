//! ringgate: the binary.
fn main() {}
