"""Files in and out: image readers, geometry, orientation, atomic writes, batch input/output."""
