"""What the daemon learns about its model in the field: quality counts per bundle version
(:mod:`.quality`) and the shadow checks that measure agreement with the cloud (:mod:`.shadow`)."""
