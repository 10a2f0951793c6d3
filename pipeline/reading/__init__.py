"""Reading a CT series: files to a sorted HU volume with its geometry, eligibility rules, reference labels."""
