from authz.server import main

main()
