//! io_uring set-up flags, cheapest first, shared by ringload's workers and
//! the proxy's (the proxy depends on this crate already, for its demo).
//! With one thread per ring, SINGLE_ISSUER + DEFER_TASKRUN post completions
//! only when the thread asks for them (no reschedule IPI, no task work while
//! it runs); COOP_TASKRUN for kernels before 6.1; none before 5.19.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingFlags {
    DeferTaskrun,
    CoopTaskrun,
    Plain,
}

impl RingFlags {
    /// Every set-up, the one to try first first.
    pub const PREFERENCE: [RingFlags; 3] = [
        RingFlags::DeferTaskrun,
        RingFlags::CoopTaskrun,
        RingFlags::Plain,
    ];

    /// As start-up lines name it.
    pub fn name(self) -> &'static str {
        match self {
            RingFlags::DeferTaskrun => "single_issuer+defer_taskrun",
            RingFlags::CoopTaskrun => "coop_taskrun",
            RingFlags::Plain => "no set-up flags",
        }
    }

    pub fn builder(self) -> io_uring::Builder {
        let mut builder = io_uring::IoUring::builder();
        match self {
            RingFlags::DeferTaskrun => {
                builder.setup_single_issuer().setup_defer_taskrun();
            }
            RingFlags::CoopTaskrun => {
                builder.setup_coop_taskrun().setup_taskrun_flag();
            }
            RingFlags::Plain => {}
        }
        builder
    }

    /// Does this kernel accept these flags? A small ring is built and
    /// dropped on the calling thread.
    pub fn supported(self) -> bool {
        self.builder().build(8).is_ok()
    }
}
