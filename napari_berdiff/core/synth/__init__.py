"""Generated data: BraTS-like brain volumes and retinal OCT B-scans."""
