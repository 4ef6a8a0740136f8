"""Entry point: python3 -m bot"""

from .app import main

raise SystemExit(main())
