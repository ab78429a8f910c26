import sys

from pakit_stream.cli import main

sys.exit(main())
