# ruff: noqa: E501  (verbatim AWS bytes; the long lines are the data)
"""Real SNS deliveries, signed by AWS, and the AWS certificate that verifies them.

Sources (public repositories, quoted as test data):

- the notification bodies: ``ahonnecke/SnsPublisher`` README.md ("Delivered contents,
  compressed"), SNS deliveries from us-west-2 on 2023-01-18, quoted verbatim with AWS's own
  layout;
- the certificate: ``JetBrains/teamcity-aws-sns-trigger-plugin``,
  ``aws-sns-trigger-common/src/test/resources/signatureCert/0694e8c8-...pem``: the certificate
  AWS served as ``SimpleNotificationService-56e67fcb41f6fec09b0196692625d385.pem`` (subject
  CN=sns.amazonaws.com, issuer "Amazon, Server CA 1B", valid 2022-06-29 to 2023-06-03), the
  SigningCertURL both notifications name.

Nothing in Wharf produced these bytes: verifying them exercises the string-to-sign and the
SHA1withRSA check against AWS itself.
"""

AWS_SIGNING_CERT_PEM = b"""\
-----BEGIN CERTIFICATE-----
MIIF2zCCBMOgAwIBAgIQCbogXPgKeqHy9lOwcjGKpTANBgkqhkiG9w0BAQsFADBG
MQswCQYDVQQGEwJVUzEPMA0GA1UEChMGQW1hem9uMRUwEwYDVQQLEwxTZXJ2ZXIg
Q0EgMUIxDzANBgNVBAMTBkFtYXpvbjAeFw0yMjA2MjkwMDAwMDBaFw0yMzA2MDMy
MzU5NTlaMBwxGjAYBgNVBAMTEXNucy5hbWF6b25hd3MuY29tMIIBIjANBgkqhkiG
9w0BAQEFAAOCAQ8AMIIBCgKCAQEA5YzF4g9Y8VUo4F8DVUcQ2pylVpAiPNyyq2VY
5ybkw+jt7ZAKpmdnGKPdFKCfI0TuZvUBABJ6I8yz0Zw2b8oDNmF+W+9cRZ0+G2VU
9fakJa0jRrgJBnVecjFKoGDU9YwjDXTfT4LEGWFm8PFsvsyT3cm/4yxIY2Ds4GLm
g9ymrXBKFR41qNaRCTKU1VQ+WDXLAHpW8EfIBjIqDg0dncYGu/u0Qx3W/BVy6BPl
xMH7exn7wJA1GO6VnDPyyKQ2fwR5ks2omE+J3qRmMYAcQCfjSDAfLw3t4oIPKK1R
nRCdK6pgoSFxphF9QlKXn1rmNprC+MbnVnRe0CEymqhGngiQiQIDAQABo4IC7TCC
AukwHwYDVR0jBBgwFoAUWaRmBlKge5WSPKOUByeWdFv5PdAwHQYDVR0OBBYEFMJb
o6szSbq+Fu1RMn9G6ujEaVEIMBwGA1UdEQQVMBOCEXNucy5hbWF6b25hd3MuY29t
MA4GA1UdDwEB/wQEAwIFoDAdBgNVHSUEFjAUBggrBgEFBQcDAQYIKwYBBQUHAwIw
PQYDVR0fBDYwNDAyoDCgLoYsaHR0cDovL2NybC5zY2ExYi5hbWF6b250cnVzdC5j
b20vc2NhMWItMS5jcmwwEwYDVR0gBAwwCjAIBgZngQwBAgEwdQYIKwYBBQUHAQEE
aTBnMC0GCCsGAQUFBzABhiFodHRwOi8vb2NzcC5zY2ExYi5hbWF6b250cnVzdC5j
b20wNgYIKwYBBQUHMAKGKmh0dHA6Ly9jcnQuc2NhMWIuYW1hem9udHJ1c3QuY29t
L3NjYTFiLmNydDAMBgNVHRMBAf8EAjAAMIIBfwYKKwYBBAHWeQIEAgSCAW8EggFr
AWkAdgDoPtDaPvUGNTLnVyi8iWvJA9PL0RFr7Otp4Xd9bQa9bgAAAYGtmiE9AAAE
AwBHMEUCIELrqLuolvf1v8v/E4niiCqlo8f2+H17RVBANsyL71BJAiEA0m/JNE5l
6hhBBedPEGpohM8s3ruGQh8lt09MZcsfT2MAdwA1zxkbv7FsV78PrUxtQsu7ticg
JlHqP+Eq76gDwzvWTAAAAYGtmiEaAAAEAwBIMEYCIQDEqcEbX5emS67nngXRHOIg
Zev/O4uqg1ZfgEvzaBqd7QIhAMmiWF8jFp71BVZMGwJxLifkyNT7lLEFH/SKBzXk
aHFLAHYAs3N3B+GEUPhjhtYFqdwRCUp5LbFnDAuH3PADDnk2pZoAAAGBrZohUgAA
BAMARzBFAiEAuUV+F7cNwWZFU2loPe7oVpVdM2dwxncLm9gJF7fv/9ICIF2xc324
XAWRWEVosNUKY4nOiwzhVAT69/cPdEoK3En2MA0GCSqGSIb3DQEBCwUAA4IBAQAi
YYozz0Q1hAmQf1nDyqoGzsZQCpEjGh0CrhP8FktRzEthA67dwI8qsrTzmswsotne
nTn0dmg5esNSFwCamxDIKguCK1Bty6F7lE1Ow6WDjmFRoNvateP59Pjh6NT3IdEN
QPBy5CfaQ4nkRKmzgtZQ71y3GdqfhWskfcXSQIzwi9LpF684a+tbV4jNLghyiSYk
3W6jorBvXRqNXF68JsQJz27oUaJywJXJ0LtrLRJ640vhd41T0rY/RMhemvCWSDKF
fM9rUbiv3laMUnh/Viea8UA//fYheXHkE0ZnjdKEdWV6jX0T2DqYu0ieso+Hy/aw
Az407vZW083P5WFSIT26
-----END CERTIFICATE-----
"""

# Verbatim, whitespace included.
AWS_NOTIFICATION = """\
{
  "Type" : "Notification",
  "MessageId" : "51d30d25-3e6b-581d-b983-516719bd5810",
  "TopicArn" : "arn:aws:sns:us-west-2:024726604032:AshtonTest",
  "Message" : "KLUv/SAOcQAAeyJmb28iOiAiYmFyIn0=",
  "Timestamp" : "2023-01-18T17:00:06.376Z",
  "SignatureVersion" : "1",
  "Signature" : "i1j9dsF3sStXPISS0/aNm40d9uUH/v7M1kDaFVltdIpZlkfSZNjP9+2J8gvxzRTHQrySS7Syo1LK93/fkicLHLRsQcl3FjzOqaidvzqMOZ7Q7HrZ7mcPiTkDLC13VWOKOm+p8YDxo+1SR54aCXMy7EtwwORUkakwsqdmpjRjNefrMJMHgZwTuzm/aFlBO1hIb69e1TrzEDRW1Zgx5WyyMReWyo/fIG5AMreGU2qsUdfTOD5rz9r1iT0vYLLz7FIW+8GWxA8WhLEu8Fp42r5mYPUgmYvOyMWQOMwuA+mM5rpaqSjdh3AQ1NhGFu2ZBm97FfdyXoCf7F4B0nSor2NUiQ==",
  "SigningCertURL" : "https://sns.us-west-2.amazonaws.com/SimpleNotificationService-56e67fcb41f6fec09b0196692625d385.pem",
  "UnsubscribeURL" : "https://sns.us-west-2.amazonaws.com/?Action=Unsubscribe&SubscriptionArn=arn:aws:sns:us-west-2:024726604032:AshtonTest:f1abc4f3-7665-4968-b39c-8a4c6f082d9b",
  "MessageAttributes" : {
    "SDLCEnv" : {"Type":"String","Value":"DEV"},
    "CirrusVersion" : {"Type":"String","Value":"v2.1.0"}
  }
}"""

AWS_NOTIFICATION_2 = """\
{
  "Type" : "Notification",
  "MessageId" : "5623b23e-dcfc-5444-a6c5-ee7cfb2a3449",
  "TopicArn" : "arn:aws:sns:us-west-2:024726604032:AshtonTest",
  "Message" : "{\\"foo\\": \\"bar\\"}",
  "Timestamp" : "2023-01-18T17:00:06.324Z",
  "SignatureVersion" : "1",
  "Signature" : "zr9Za7P29Vwd4AnllQ64qn6Z6yHvCLPAv+4iWd1er6LD2J+9Qm7tG2KzkueWlkRrrFxJIbl+S3imYoZw0FQl396Lml5tFhsuXjAqNpOEWR7Y2yZaVB4veym/NWtikli8dHL8/cGBXnZ/4LG5s5Hq9iHca2XXThb/cMr0Vnl5GrtTytWiXE6W6f7HLSxc5pK0oYrpf76goXGaynOKBaw8Z8ekg12byTXtaNQpYUImbKkI6MsHdEITvS1SiA4AK5Radan5gDNOWWqqvYuQO8R5MX+fNha/Y0ryjCFo95t65o4guULqTpOCZB5c3kpyJOeiOx3Qx9erMpSxFcZf1gcPRA==",
  "SigningCertURL" : "https://sns.us-west-2.amazonaws.com/SimpleNotificationService-56e67fcb41f6fec09b0196692625d385.pem",
  "UnsubscribeURL" : "https://sns.us-west-2.amazonaws.com/?Action=Unsubscribe&SubscriptionArn=arn:aws:sns:us-west-2:024726604032:AshtonTest:f1abc4f3-7665-4968-b39c-8a4c6f082d9b",
  "MessageAttributes" : {
    "SDLCEnv" : {"Type":"String","Value":"PROD"},
    "CirrusVersion" : {"Type":"String","Value":"v1.1.0"}
  }
}"""
