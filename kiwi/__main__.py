import sys

from kiwi.cli import main

sys.exit(main())
