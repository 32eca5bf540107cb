//! Test-only support: waiting on conditions, HTTP/SSE helpers, and (as they are added)
//! fakes of remote services that speak the real wire protocols.
