from authz.process import main

main()
