"""Running a trained model: detector, pre/post-processing, batching, devices and acceleration."""
