//! sixgate
