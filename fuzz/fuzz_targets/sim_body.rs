//! One HTTP request body -> the simulator's pure request validation
//! (`sim::check_request_body`: form/JSON token fields, primary-key path specs, rowset rows
//! against declared and undeclared data extensions, every column type check).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = sfmc_relay::sim::check_request_body(data);
});
