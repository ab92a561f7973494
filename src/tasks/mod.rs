//! Data for attribution: calibration sampling (and later task and correction sets).

pub mod calib;
