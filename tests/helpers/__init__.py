"""What the tests share: servers, daemons, fleets, bundles and stand-ins that more than one test
module uses. Test modules and conftests import from here and from nowhere else under tests/
(tests/test_seams.py checks it); pytest fixtures stay in the conftests."""
