//! slipway CLI (skeleton).
fn main() {}
