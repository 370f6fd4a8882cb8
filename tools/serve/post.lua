-- wrk script: POST the JSON body of the file named by $BODY to $URL_PATH, counting non-200s.
wrk.method = "POST"
wrk.path = os.getenv("URL_PATH") or "/v1/chat/completions"
wrk.headers["Content-Type"] = "application/json"
local f = assert(io.open(os.getenv("BODY"), "rb"))
wrk.body = f:read("*a")
f:close()
