//! Endpoint choice (DESIGN §4 "Endpoint choice", §5 destinations).
