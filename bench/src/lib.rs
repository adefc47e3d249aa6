//! ringgate-bench: criterion micro-benchmarks of the core and the side-by-side
//! comparison runner. Not built yet: see docs/BENCHMARKS.md for the manual,
//! scripted comparison used until then.
#![forbid(unsafe_code)]
