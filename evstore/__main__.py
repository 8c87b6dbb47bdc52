import sys
from evstore.cli import main

sys.exit(main())
