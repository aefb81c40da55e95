from .stage import main

raise SystemExit(main())
