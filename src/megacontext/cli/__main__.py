from megacontext.cli import main

main()
