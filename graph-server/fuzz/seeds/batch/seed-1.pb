node-a"ğíGET"	/checkout0ÈH€Şûá¸¦ÃPÀ¦şá¸¦ÃXˆ'r 4bf92f3577b34da6a3ce929d0e0e4736z00f067aa0ba902b7Šk
frontendshop"*spiffe://cluster.local/ns/shop/sa/frontend2	10.0.1.10:frontend.shop.svc.cluster.local@?’k
checkoutshop"*spiffe://cluster.local/ns/shop/sa/checkout2	10.0.1.20:checkout.shop.svc.cluster.local@?š10.0.1.10:40000¢10.0.1.20:8080¨d²node-a"ğíGET"	/checkout0ÈH Òüûá¸¦ÃPàè­şá¸¦ÃXˆ'r 4bf92f3577b34da6a3ce929d0e0e4736z00f067aa0ba902b7Šk
frontendshop"*spiffe://cluster.local/ns/shop/sa/frontend2	10.0.1.10:frontend.shop.svc.cluster.local@?’k
checkoutshop"*spiffe://cluster.local/ns/shop/sa/checkout2	10.0.1.20:checkout.shop.svc.cluster.local@?š10.0.1.10:40000¢10.0.1.20:8080¨²node-b"ğíGET"	/checkout0ÈHÀ”›üá¸¦ÃP€«Ìşá¸¦ÃXˆ'r 4bf92f3577b34da6a3ce929d0e0e4736z00f067aa0ba902b7Šk
frontendshop"*spiffe://cluster.local/ns/shop/sa/frontend2	10.0.1.10:frontend.shop.svc.cluster.local@?’k
checkoutshop"*spiffe://cluster.local/ns/shop/sa/checkout2	10.0.1.20:checkout.shop.svc.cluster.local@?š10.0.1.10:40000¢10.0.1.20:8080¨d²node-a"ğíGET"	/checkout0ÈHàÖ¹üá¸¦ÃP íêşá¸¦ÃXˆ'r 4bf92f3577b34da6a3ce929d0e0e4736z00f067aa0ba902b7Šk
frontendshop"*spiffe://cluster.local/ns/shop/sa/frontend2	10.0.1.10:frontend.shop.svc.cluster.local@?’k
checkoutshop"*spiffe://cluster.local/ns/shop/sa/checkout2	10.0.1.20:checkout.shop.svc.cluster.local@?š10.0.1.10:40000¢10.0.1.20:8080¨²node-b"ğíGET"	/checkout0ÈH€™Øüá¸¦ÃPÀ¯‰ÿá¸¦ÃXˆ'r 4bf92f3577b34da6a3ce929d0e0e4736z00f067aa0ba902b7Šk
frontendshop"*spiffe://cluster.local/ns/shop/sa/frontend2	10.0.1.10:frontend.shop.svc.cluster.local@?’k
checkoutshop"*spiffe://cluster.local/ns/shop/sa/checkout2	10.0.1.20:checkout.shop.svc.cluster.local@?š10.0.1.10:40000¢10.0.1.20:8080¨d²node-a"ğíGET"	/checkout0ÈH Ûöüá¸¦ÃPàñ§ÿá¸¦ÃXˆ'r 4bf92f3577b34da6a3ce929d0e0e4736z00f067aa0ba902b7Šk
frontendshop"*spiffe://cluster.local/ns/shop/sa/frontend2	10.0.1.10:frontend.shop.svc.cluster.local@?’k
checkoutshop"*spiffe://cluster.local/ns/shop/sa/checkout2	10.0.1.20:checkout.shop.svc.cluster.local@?š10.0.1.10:40000¢10.0.1.20:8080¨²node-b"ğíGET"	/checkout0ÈHÀ•ıá¸¦ÃP€´Æÿá¸¦ÃXˆ'r 4bf92f3577b34da6a3ce929d0e0e4736z00f067aa0ba902b7Šk
frontendshop"*spiffe://cluster.local/ns/shop/sa/frontend2	10.0.1.10:frontend.shop.svc.cluster.local@?’k
checkoutshop"*spiffe://cluster.local/ns/shop/sa/checkout2	10.0.1.20:checkout.shop.svc.cluster.local@?š10.0.1.10:40000¢10.0.1.20:8080¨d²node-a"ğíGET"	/checkout0ÈHàß³ıá¸¦ÃP öäÿá¸¦ÃXˆ'r 4bf92f3577b34da6a3ce929d0e0e4736z00f067aa0ba902b7Šk
frontendshop"*spiffe://cluster.local/ns/shop/sa/frontend2	10.0.1.10:frontend.shop.svc.cluster.local@?’k
checkoutshop"*spiffe://cluster.local/ns/shop/sa/checkout2	10.0.1.20:checkout.shop.svc.cluster.local@?š10.0.1.10:40000¢10.0.1.20:8080¨²node-b