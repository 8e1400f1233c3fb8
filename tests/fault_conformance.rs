//! A `FaultyLink` with an empty plan must be a faithful `Link`: the conformance suite over it.

#[macro_use]
mod conformance;

use actix_tether::links::fault::{FaultPlan, FaultyLink};
use actix_tether::links::stream::StreamLink;

suite!(faulty_passthrough_duplex, || async {
    let (a, b) = StreamLink::duplex_pair(64 * 1024);
    (
        FaultyLink::new(a, FaultPlan::new(1)),
        FaultyLink::new(b, FaultPlan::new(2)),
    )
});
suite!(faulty_passthrough_unix, || async {
    let (a, b) = StreamLink::unix_pair(Default::default()).unwrap();
    (
        FaultyLink::new(a, FaultPlan::default()),
        FaultyLink::new(b, FaultPlan::default()),
    )
});
