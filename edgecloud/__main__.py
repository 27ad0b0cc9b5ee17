from edgecloud.cli import main

raise SystemExit(main())
