//! A strict local SFMC simulator (to be written).
