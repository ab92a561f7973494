//! Data for attribution: calibration sampling, two-choice tasks (IOI built in, any task from a
//! file), and later correction sets.

pub mod calib;
pub mod ioi;
pub mod task;
pub mod undesired;
