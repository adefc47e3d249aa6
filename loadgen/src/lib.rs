//! ringgate-loadgen: home of `ringload`, the bundled load generator. Not built
//! yet: the glommio engine, coordinated-omission correction and reports arrive
//! with their own issue. Until then `ringgate demo` drives load itself.
#![forbid(unsafe_code)]
