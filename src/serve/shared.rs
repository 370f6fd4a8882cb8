//! The parts of `blip2 serve` compiled into the library (`blip2::serve_api`) rather than the
//! binary, so that the fuzz targets parse requests with the server's own code: the request
//! JSON and its conversion (`api`), limits and API errors (`limits`). The binary's `serve`
//! module uses them from here.

#[path = "api.rs"]
pub mod api;
#[path = "limits.rs"]
pub mod limits;
