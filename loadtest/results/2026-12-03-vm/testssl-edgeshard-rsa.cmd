testssl --quiet --color 0 --warnings off --openssl-timeout 5 -p -P -S -E -U --jsonfile loadtest/results/2026-12-03-vm/testssl-edgeshard-rsa.json 127.0.0.1:18451
